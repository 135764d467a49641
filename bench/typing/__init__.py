"""`cgbench typing`: replay typing a file as an editor asks for completions (the session plan,
the replay, the summary), and `cgbench train-tokenizer` for random weights."""
