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

from ...core.hooks import Plot, register_plot
from ...errors import UserError


def _owned_state(run: Path) -> dict[str, torch.Tensor]:
    from ...core.state_files import load_checkpoint_file, load_tensor_dict

    if (run / "rule_state.pt").is_file():
        return load_tensor_dict(run / "rule_state.pt", "rule state")
    if (run / "checkpoint.pt").is_file():  # weights_only=True, one-line errors
        state = load_checkpoint_file(run / "checkpoint.pt")
        rule = state.get("rule")
        owned = rule.get("owned") if isinstance(rule, dict) else None
        return {k: v for k, v in owned.items() if isinstance(v, torch.Tensor)} if isinstance(owned, dict) else {}
    raise UserError(f"{str(run)!r} has neither rule_state.pt nor checkpoint.pt; pass the run directory "
                    f"of a bfa training run")


def generated_images(run_dir: str | Path, trust_imports: bool = False) -> tuple[torch.Tensor, str]:
    """``(images, dataset)``: one generated input per class, shape ``(n_classes, n_inputs)``.

    The run's ``config.yaml`` may name an import-path model only with ``trust_imports``."""
    from ..._io import yaml_load
    from ...imports import UntrustedImportError
    from ...models import build_model
    from ...models.custom import is_import_spec
    from ..registry import make

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{str(run)!r} is not a run directory (no config.yaml); pass the --out directory "
                        f"of `bioplausible train --rule bfa`")
    try:
        cfg = yaml_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except Exception as exc:  # noqa: BLE001 - yaml errors, undecodable bytes
        raise UserError(f"{str(run / 'config.yaml')!r} cannot be read ({type(exc).__name__}); the run "
                        f"directory is damaged") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("rule"), dict) or not isinstance(cfg.get("model"), dict):
        raise UserError(f"{str(run / 'config.yaml')!r} is not a run's config (no rule or model section)")
    if is_import_spec(cfg["model"].get("spec")) and not trust_imports:
        raise UntrustedImportError(
            f"run config {str(run / 'config.yaml')!r} names code to import (model.spec: "
            f"{cfg['model'].get('spec')!r}); a file never makes bioplausible import code on its own: if you "
            f"trust it, pass --trust-imports (trust_imports=True in Python)")
    if cfg["rule"].get("name") != "bfa":
        raise UserError(f"generate renders the generative network of rule 'bfa'; {str(run)!r} was trained "
                        f"with {cfg['rule'].get('name')!r}")
    owned = _owned_state(run)
    if "W_gen.1" not in owned:
        raise UserError(f"{str(run)!r} holds no generative weights (W_gen.*); was the run started?")
    n_gen = sum(1 for k in owned if k.startswith("W_gen."))
    last = owned.get(f"W_gen.{n_gen}")
    if last is None or last.ndim != 2 or owned["W_gen.1"].ndim != 2:
        raise UserError(f"{str(run)!r}: the generative weights W_gen.* are not a chain of matrices; the rule "
                        f"state is damaged or not from a bfa run")
    n_in, n_cls = last.shape[0], owned["W_gen.1"].shape[1]
    model = build_model(cfg["model"]["spec"], input_shape=(n_in,), num_classes=n_cls, **{k: v for k, v in cfg["model"].items() if k != "spec"})
    model = model.to(owned["W_gen.1"].dtype)
    rule = make("bfa", **{k: v for k, v in cfg["rule"].items() if k != "name"})
    model = rule.prepare(model)
    try:
        rule.owned.load_state_dict(owned)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = " ".join(str(exc).split())[:160]
        raise UserError(f"{str(run)!r}: the saved generative weights do not fit the run's model ({first}); "
                        f"the rule state is damaged or from another run") from None
    return rule.generate().cpu().float(), str((cfg.get("dataset") or {}).get("name", "?"))


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


def render_run(run_dir: str | Path, out: str | Path | None = None, trust_imports: bool = False) -> Path:
    """Write the Fig. 6 grid of ``run_dir`` as a PNG (default ``RUN_DIR/generated.png``)."""
    from ..._io import pyplot

    plt = pyplot()

    from ...core.image_out import image_path, save_figure

    path = image_path(out, run_dir, "generated.png")  # checked before the model is built
    images, dataset = generated_images(run_dir, trust_imports=trust_imports)
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
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
    return path


register_plot(Plot("generate", "BFA: render the generative network's image for each label (PNG)", render_run,
                   run_dir_help="run directory of a bfa training run",
                   out_help="PNG path (default: RUN_DIR/generated.png)"))
