# Minimal stubs for the parts of pycuda the gateway uses (pycuda ships none). See tools/typing/README.md.
VERSION: tuple[int, ...]
VERSION_TEXT: str
