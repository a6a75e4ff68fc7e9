"""Images: references, the registry client; later the image service, unpack and GC (issue 13)."""
