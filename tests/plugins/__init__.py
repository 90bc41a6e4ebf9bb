"""Tests of the vision plugins, the JPEG decoder and the video reader, on real images and models."""
