"""Fine-tuning with a [CLS] treatment: the treatments (`heads/`), encoder + head (`classifier`),
the training loop (`loop`), resumable state (`checkpoint`), what a run writes (`outputs`), the
finetune stage's work (`run`) and the embed_post stage's (`embed_post`: embeddings and isotropy of
a fine-tuned encoder).

Imports: `core`, `data`, `embed`, `isotropy`.
"""
