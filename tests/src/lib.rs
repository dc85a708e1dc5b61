//! Integration tests against real `tallyd` processes on 127.0.0.1; see `tests/tests/`.
