"""Stand-in pycuda (tests only; see tests/standins/README.md)."""

VERSION = (2024, 1, 2)
VERSION_TEXT = "2024.1.2"
