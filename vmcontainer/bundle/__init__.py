"""Bundle format v1: keys, the binary layout, and the device-side verifier."""
