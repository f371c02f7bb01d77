"""Per-notebook run profiles.

Each notebook has one module here that defines a frozen dataclass of its settings and a ``PROFILES``
dict with one instance per profile name (``smoke``, ``quick``, ``full``). ``mtml_lib.config.setup``
picks the instance; the notebook reads its settings from ``run.settings``.
"""

#: notebook stem -> module in this package that holds its profiles, in reading order
NOTEBOOK_PROFILES: dict[str, str] = {
    "00_overview": "overview",
    "01_math_model": "math_model",
    "02_multitask_cls_seg": "cls_seg",
    "03_maml_sinusoid": "maml_sinusoid",
    "04_few_shot_classification": "few_shot",
    "05_knowledge_transfer": "transfer",
}
