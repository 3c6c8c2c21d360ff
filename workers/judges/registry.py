"""Build a judge from its configured name."""

from __future__ import annotations

from workers.judges.base import Judge
from workers.judges.config import JudgeConfig, get_judge_config


def make_judge(config: JudgeConfig | str, store=None) -> Judge:
    """The judge for ``config`` (or a configured name); ``store`` enables the response cache and
    gives the embedding judge its VIDB anchors."""
    if isinstance(config, str):
        config = get_judge_config(config)
    if config.kind == "api":
        from workers.judges.api_judge import APIJudge

        return APIJudge(config, store)
    if config.kind == "local":
        from workers.judges.local_llm import LocalLLMJudge

        return LocalLLMJudge(config, store)
    from workers.judges.embedding_judge import EmbeddingJudge, store_anchors

    return EmbeddingJudge(config, anchors=store_anchors(store) if store is not None else None)
