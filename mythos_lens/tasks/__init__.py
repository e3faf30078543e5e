"""Ground-truth tasks for looped models (see `mythos_lens.tasks.registry`)."""
