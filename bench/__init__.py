"""gatepost's benchmark harness (run with `make bench`; never part of `make test`)."""
