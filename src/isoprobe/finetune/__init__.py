"""Fine-tuning with a [CLS] treatment: the treatments (`heads/`), encoder + head (`classifier`),
the training loop (`loop`), resumable state (`checkpoint`) and what a run writes (`outputs`).

Imports: `core`, `data`, `embed`, `isotropy`.
"""
