"""The live page of a render or a batch: the HTTP server and who it answers."""
