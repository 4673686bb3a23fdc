"""Standalone probe run under *another* interpreter (e.g. a transformers 4.57 virtualenv):
print, as JSON, the rotary inv_freq and attention scaling that transformers builds for a
model directory. It imports only transformers and torch, never yarnconv."""

import copy
import json
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def main(model_dir: str) -> None:
    config = AutoConfig.from_pretrained(model_dir)
    tiny = copy.deepcopy(config)
    tiny.num_hidden_layers = 1
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tiny)
    rotary = next(m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling"))
    built = type(rotary)(config=config)
    print(
        json.dumps(
            {
                "transformers_version": transformers.__version__,
                "inv_freq": built.inv_freq.tolist(),
                "attention_scaling": float(built.attention_scaling),
                "max_position_embeddings": config.max_position_embeddings,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
