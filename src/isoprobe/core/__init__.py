"""The bottom layer every other package stands on: typed params (`config`), errors, atomic writes
and JSON/safetensors I/O (`io`), where every output lives and what MLflow experiments are called
(`layout`), MLflow tracking (`tracking`), device and threads (`device`), loading encoders
(`models`), task scores (`scores`), params profiles (`profiles`), the repo root and git
(`repo`), the one skipped-output protocol (`skipped`), the one plot style (`figures`), the [CLS]
treatment registry (`treatments`) and what every stage script shares (`stage`).

Imports: nothing of isoprobe outside `core`.
"""
