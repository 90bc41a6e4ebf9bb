"""Adapters: the only layer that talks to libraries, the network, files and models."""
