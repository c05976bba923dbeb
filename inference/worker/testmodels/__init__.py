"""Small real models the tests and `make run` use (no network): text (`text`), vision and
speech (`media`), and their builder (`build`). MLX is imported lazily, in the worker's side."""
