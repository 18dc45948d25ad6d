"""Hostile-input tests: a corpus of code-running checkpoints, built at test time in tmp_path.

No live payload is committed: :mod:`.gadgets` writes each file when a test asks for it, and every
payload only creates a marker file inside the test's own temporary folder.
"""
