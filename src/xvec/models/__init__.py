"""Built-in speaker embedding models; each is registered as an ``xvec.models`` entry point."""
