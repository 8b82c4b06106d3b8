"""The reversal picture: the pure figure function, ``lightning predict`` with reverse.yaml, W&B offline."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from callbacks.reversal_picture import MARK, RIGHT, WRONG, ReversalPicture, accuracies, reversal_figure
from datamodules.cifar import CIFAR10_CLASSES
from lightning_modules.cli import run_cli
from lightning_modules.evaluation.report import save_figure
from tests.cli_runs import lightning

REPO = Path(__file__).resolve().parents[2]


def _tensors(n: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    x_adv = (x + (torch.rand(x.shape, generator=g) - 0.5) * 16 / 255).clamp(0, 1)
    x_rev = (x_adv + (torch.rand(x.shape, generator=g) - 0.5) * 32 / 255).clamp(0, 1)
    return x, x_adv, x_rev


def test_figure_size_labels_and_accuracies(tmp_path):
    x, x_adv, x_rev = _tensors(4)
    y = torch.tensor([0, 1, 2, 3])
    pred_clean, pred_before, pred_after = torch.tensor([0, 1, 2, 9]), torch.tensor([5, 5, 5, 3]), y.clone()
    # the title's accuracies are on a larger set than the 4 images shown: 8 images, computed by hand
    y8 = torch.arange(8)
    acc = accuracies(y8, y8.clone(), torch.tensor([0, 9, 9, 9, 9, 9, 9, 9]), torch.tensor([0, 1, 2, 9, 9, 5, 6, 9]))
    assert {k: acc[k] for k in ("n", "clean", "before", "after")} == {
        "n": 8,
        "clean": 1.0,
        "before": 1 / 8,
        "after": 5 / 8,
    }
    # the paired gain: 4 images right only after the reversal, none only before -> +50 points, exact p = 2 / 2**4
    assert acc["gain"]["gain"] == 0.5 and acc["gain"]["p_mcnemar"] == pytest.approx(0.125)
    assert acc["gain"]["lo"] < 0.5 < acc["gain"]["hi"] and acc["ci_after"][0] < 5 / 8 < acc["ci_after"][1]
    fig = reversal_figure(
        x,
        x_adv,
        x_rev,
        y,
        pred_clean,
        pred_before,
        pred_after,
        CIFAR10_CLASSES,
        acc,
        attack="PGD-2",
        idx=torch.tensor([10, 11, 12, 13]),
    )
    title = fig._suptitle.get_text()
    assert "Accuracy on 8 images: clean 100.0% | attacked, no reversal 12.5% | attacked + reversal 62.5%" in title
    assert len(fig.axes) == 5 * 4
    assert [ax.get_title() for ax in fig.axes[:4]] == [
        "#10 true: airplane",
        "#11 true: automobile",
        "#12 true: bird",
        "#13 true: cat",
    ]
    # under the clean / attacked / reversed rows: the prediction, green + check when right, red + cross when wrong
    for row, preds in enumerate((pred_clean, pred_before, pred_after)):
        for i in range(4):
            (text,) = fig.axes[4 * row + i].texts
            ok = bool(preds[i] == y[i])
            assert text.get_text() == f"{CIFAR10_CLASSES[int(preds[i])]} {MARK[ok]}"
            assert text.get_color() == (RIGHT if ok else WRONG)
    assert not fig.axes[12].texts and not fig.axes[16].texts  # difference rows: no labels
    gain = 1 / max((x_adv - x).abs().max().item(), (x_rev - x_adv).abs().max().item())
    assert f"\u00d7 {gain:.1f}" in title and fig.axes[12].get_ylabel().startswith("|x_adv - x|")
    assert tuple(fig.get_size_inches()) == pytest.approx((1.3 * 4 + 1.3, 1.62 * 5 + 0.3))
    save_figure(fig, tmp_path / "p.png")
    w, h = Image.open(tmp_path / "p.png").size
    # 120 dpi, cropped to what is drawn; the title above the images adds some height (and the unwrapped
    # accuracy line a little width when there are few columns)
    assert 0.85 * 6.5 * 120 < w < 1.2 * 6.5 * 120 and 0.9 * 8.4 * 120 < h < 1.25 * 8.4 * 120, (w, h)
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically


def test_figure_without_class_names_shows_numbers():
    x, x_adv, x_rev = _tensors(2)
    y = torch.tensor([3, 7])
    fig = reversal_figure(x, x_adv, x_rev, y, y, y, torch.tensor([3, 1]), None, accuracies(y, y, y, y))
    assert fig.axes[0].get_title() == "true: 3" and fig.axes[5].texts[0].get_text() == f"1 {MARK[False]}"


def _predict_args(data_dir: Path, root: Path, png: Path, *extra: str) -> list[str]:
    """reverse.yaml on tiny data: 12 test images in one batch, a tiny untrained model, 2 attack / reversal steps."""
    return [
        "predict",
        "--config",
        str(REPO / "experiments/cifar10/reverse.yaml"),
        "--allow_untrained",
        "true",
        "--data.init_args.data_dir",
        str(data_dir),
        "--data.init_args.strict_counts",
        "false",
        "--data.init_args.n_examples",
        "12",
        "--data.init_args.eval_batch_size",
        "12",
        "--model.init_args.backbone",
        "small_cnn",
        "--model.init_args.backbone_kwargs",
        "{width: 4}",
        "--model.init_args.head_hidden",
        "16",
        "--model.init_args.head_dim",
        "8",
        "--model.init_args.inference.predict_attack_steps",
        "2",
        "--model.init_args.reversal",
        "{steps: 2, n_views: 2}",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(root),
        "--trainer.callbacks.init_args.output",
        str(png),
        *extra,
    ]


def test_predict_writes_the_picture_and_refuses_to_replace_it(tiny_cifar10, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    png = tmp_path / "out" / "reversal.png"
    cli = run_cli(_predict_args(tiny_cifar10, tmp_path, png))
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, ReversalPicture)]
    assert Image.open(png).size[0] > 1000  # 10 columns
    # the accuracies are those of every predicted image, as predict_step returned them
    outs = cli.trainer.predict_loop.predictions  # one data loader: the batches' outputs
    manual = accuracies(*(torch.cat([o[k] for o in outs]) for k in ("y", "pred_clean", "pred_before", "pred_after")))
    assert cb.accuracies == manual and manual["n"] == 12
    out = capsys.readouterr().out
    assert f"reversal picture -> {png}" in out
    assert f"accuracy on 12 images: clean {manual['clean']:.1%} | attacked, no reversal {manual['before']:.1%}" in out
    # an existing picture is kept unless --overwrite true
    before = png.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--overwrite true"):
        run_cli(_predict_args(tiny_cifar10, tmp_path, png))
    assert png.stat().st_mtime_ns == before
    run_cli(_predict_args(tiny_cifar10, tmp_path, png, "--overwrite", "true"))
    assert png.stat().st_mtime_ns != before


def test_wandb_offline_records_the_picture(tiny_cifar10, tmp_path):
    png = tmp_path / "reversal.png"
    r = lightning(*_predict_args(tiny_cifar10, tmp_path, png), cwd=tmp_path, WANDB_MODE="offline")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert png.is_file()
    media = list(tmp_path.glob("wandb/offline-run-*/files/media/images/reversal/picture_*.png"))
    assert len(media) == 1, sorted(str(p) for p in tmp_path.rglob("*"))[:50]
    assert Image.open(media[0]).size == Image.open(png).size


def test_attack_label_names_the_budget_as_the_reports_do():
    from types import SimpleNamespace

    from callbacks.reversal_picture import attack_label
    from lightning_modules.settings import AttackConfig, InferenceConfig

    def label(eps: float = 8 / 255, **inference) -> str:
        return attack_label(
            SimpleNamespace(attack_cfg=AttackConfig(eps=eps), inference_cfg=InferenceConfig(**inference))
        )

    assert label(predict_attack_steps=20, eps=8 / 255) == "PGD-20, eps 8/255"
    assert label(predict_attack_steps=10) == "PGD-10, eps 8/255"
    assert label(predict_attack_steps=20, eps=0.03) == "PGD-20, eps 0.03"  # not a multiple of 1/255
    assert label(predict_attack="none") == "no attack"
