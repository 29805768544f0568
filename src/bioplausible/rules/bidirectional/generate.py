"""Label-to-image generation of a trained BFA run (Luo, Fu & Glass 2017, Fig. 6).

``render_run(RUN_DIR)`` rebuilds the run's model and ``bfa`` rule from ``config.yaml``, loads the
generative weights (``rule_state.pt``, or the checkpoint's owned tensors for an unfinished run),
computes ``x̂ = generate(one-hot label)`` for every class and writes one PNG grid, each image
min-max scaled on its own (the generative network is trained on the run's normalised inputs, so
its outputs need not lie in [0, 1]). CLI: ``bioplausible generate RUN_DIR [--out PNG]``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ...errors import UserError


def _owned_state(run: Path) -> dict[str, torch.Tensor]:
    if (run / "rule_state.pt").is_file():
        return torch.load(run / "rule_state.pt", map_location="cpu", weights_only=True)
    if (run / "checkpoint.pt").is_file():
        state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
        return dict(state.get("rule", {}).get("owned", {}))
    raise UserError(f"{str(run)!r} has neither rule_state.pt nor checkpoint.pt; pass the run directory "
                    f"of a bfa training run")


def generated_images(run_dir: str | Path) -> tuple[torch.Tensor, str]:
    """``(images, dataset)``: one generated input per class, shape ``(n_classes, n_inputs)``."""
    from ...engine.config import load_config
    from ...models import build_model
    from ..._registry import make

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{str(run)!r} is not a run directory (no config.yaml); pass the --out directory "
                        f"of `bioplausible train --rule bfa`")
    cfg = load_config(run / "config.yaml", recommended=False)
    if cfg["rule"]["name"] != "bfa":
        raise UserError(f"generate renders the generative network of rule 'bfa'; {str(run)!r} was trained "
                        f"with {cfg['rule']['name']!r}")
    owned = _owned_state(run)
    if "W_gen.1" not in owned:
        raise UserError(f"{str(run)!r} holds no generative weights (W_gen.*); was the run started?")
    n_gen = sum(1 for k in owned if k.startswith("W_gen."))
    n_in, n_cls = owned[f"W_gen.{n_gen}"].shape[0], owned["W_gen.1"].shape[1]
    model = build_model(cfg["model"]["spec"], input_shape=(n_in,), num_classes=n_cls, **cfg.model_options())
    model = model.to(owned["W_gen.1"].dtype)
    rule = make("bfa", **cfg.rule_options())
    model = rule.prepare(model)
    rule.owned.load_state_dict(owned)
    return rule.generate().cpu().float(), cfg["dataset"]["name"]


def _as_image(v: torch.Tensor):
    n = v.numel()
    v = (v - v.min()) / (v.max() - v.min()).clamp_min(1e-12)
    if n % 3 == 0 and math.isqrt(n // 3) ** 2 == n // 3:  # colour, channels first (CIFAR)
        side = math.isqrt(n // 3)
        return v.reshape(3, side, side).permute(1, 2, 0).numpy(), None
    side = math.isqrt(n)
    if side * side == n:
        return v.reshape(side, side).numpy(), "gray"
    return v.reshape(1, n).numpy(), "gray"


def render_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the Fig. 6 grid of ``run_dir`` as a PNG (default ``RUN_DIR/generated.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, dataset = generated_images(run_dir)
    n = images.shape[0]
    cols = min(n, 10)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img, cmap = _as_image(images[i])
            ax.imshow(img, cmap=cmap, interpolation="nearest", aspect="auto" if img.shape[0] == 1 else "equal")
            ax.set_title(str(i), fontsize=9)
    fig.suptitle(f"BFA generative network: x̂ for each one-hot label ({dataset})", fontsize=9)
    fig.tight_layout()
    path = Path(out) if out is not None else Path(run_dir) / "generated.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
