"""Per-loop activation datasets at scale (``mythos-lens collect``): Arrow shards in datasets'
``save_to_disk`` layout, written by one process or many (``torch.distributed``), resumable, from
models on one device or dispatched by accelerate. Start with :mod:`.run`."""
