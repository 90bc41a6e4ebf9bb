"""Use cases of ForgeSyte Stream, written against ports so that adapters can be swapped."""
