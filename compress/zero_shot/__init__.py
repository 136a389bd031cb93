"""Zero-shot accuracy through lm-evaluation-harness (optional extra `zeroshot`) and the offline task built
from the held-out novel (next_sentence)."""
from compress.zero_shot.harness import (OFFLINE_TASKS, INSTALL_HINT, accuracy, check_tasks, require_lm_eval,
                                        summary_lines, zero_shot)

__all__ = ["OFFLINE_TASKS", "INSTALL_HINT", "accuracy", "check_tasks", "require_lm_eval", "summary_lines", "zero_shot"]
