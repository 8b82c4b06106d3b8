# ssl-reversal — common jobs. Run `make install` first; every target uses .venv.
PY        ?= .venv/bin/python
CLI       ?= .venv/bin/lightning
DATA_DIR  ?= data
PACK      ?= ../shared/data/cifar10-jpeg.npz
CKPT      ?=
ARGS      ?=

.PHONY: install test lint format data train-cifar10 eval-cifar10 reverse-cifar10 certify-cifar10 kap-scaling bench \
	corruptions-cifar10 clean device-wheels gpu-run gpu-results

install:
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	.venv/bin/pip install -q -e ".[test]"

# The test suite and every docstring example (doctests) of the package.
test:
	.venv/bin/python -m pytest -q --doctest-modules lightning_modules datamodules callbacks scripts tests

# Style: ruff's lint rules and its formatter (settings in pyproject.toml); `make format` applies both.
lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format:
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

# CIFAR-10 in the standard python layout under $(DATA_DIR); offline, built from the shared JPEG pack.
data: $(DATA_DIR)/cifar-10-batches-py/test_batch
# DOWNLOAD=1 (online): torchvision's downloader fetches the official files instead.
DOWNLOAD  ?=
$(DATA_DIR)/cifar-10-batches-py/test_batch:
	@if [ -f "$(PACK)" ]; then $(PY) $(dir $(PACK))cifar10_from_pack.py --out $(DATA_DIR) --pack $(PACK); \
	elif [ "$(DOWNLOAD)" = 1 ]; then $(PY) -c "from torchvision.datasets import CIFAR10; CIFAR10('$(DATA_DIR)', download=True)"; \
	else echo "error: CIFAR-10 missing at $(DATA_DIR)/cifar-10-batches-py and no pack at $(PACK): add DOWNLOAD=1 (online; e.g. make train-cifar10 DOWNLOAD=1), give PACK=path/to/cifar10-jpeg.npz, or copy the folder there" >&2; exit 1; fi

# The main job. With a GPU: PreActResNet-18, PGD-10 AT + contrastive head (pgd_at.yaml). Without one: the CPU
# profile (cpu.yaml: small CNN, fast AT + head, 4 epochs; ~10 min on 2 cores). Either way it then prints clean and
# PGD-20 accuracy on the first 1,000 test images (check.yaml) and draws the reversal picture (reverse.yaml).
# TRAIN_DEVICE=cpu|gpu forces a profile; ARGS go to the fit (the check and the picture then load the checkpoint
# that fit wrote, also under ARGS='--trainer.default_root_dir DIR'). A rerun after a finished run refuses its
# folder: ARGS='--ckpt_path last' resumes that run, ARGS='--trainer.default_root_dir DIR' starts one elsewhere.
TRAIN_DEVICE ?=
train-cifar10: data
	@dev="$(TRAIN_DEVICE)"; [ -n "$$dev" ] || dev=$$($(PY) -c "import torch; print('gpu' if torch.cuda.is_available() else 'cpu')"); \
	if [ "$$dev" = gpu ]; then exp=pgd_at; \
	  echo "[main] GPU found: PGD-10 adversarial training of PreActResNet-18 + head (experiments/cifar10/pgd_at.yaml)."; \
	else exp=cpu; \
	  echo "[main] No GPU: the CPU profile (experiments/cifar10/cpu.yaml): small CNN, fast AT + contrastive head, 4 epochs"; \
	  echo "[main] of 50,000 images; about 10 minutes on 2 cores, then the accuracy check and the reversal picture (~1 min)."; \
	fi; \
	root=logs; prev=; for a in $(ARGS); do \
	  case "$$prev" in --trainer.default_root_dir) root=$$a;; esac; \
	  case "$$a" in --trainer.default_root_dir=*) root=$${a#*=};; esac; prev=$$a; \
	done; \
	ckpt=$$root/checkpoints/cifar10/$$exp/last.ckpt; \
	SSL_REVERSAL_MAKE="make train-cifar10" \
	$(CLI) fit --config experiments/cifar10/$$exp.yaml --data.init_args.data_dir $(DATA_DIR) $(ARGS) && \
	$(CLI) test --config experiments/cifar10/check.yaml --ckpt_path $$ckpt --data.init_args.data_dir $(DATA_DIR) && \
	$(CLI) predict --config experiments/cifar10/reverse.yaml --ckpt_path $$ckpt --data.init_args.data_dir $(DATA_DIR) \
	  --overwrite true && \
	echo "[main] checkpoint $$ckpt; evaluate it: make eval-cifar10 CKPT=$$ckpt EVAL=eval_quick (CPU) or EVAL=eval (GPU)"

# CIFAR-10-C layout (15 corruptions x 5 severities, 50000 x 32 x 32 x 3 uint8 each) generated from the CIFAR-10
# test set; GPU when available (--device cpu|cuda in ARGS). Not the official files: see datamodules/corruptions.py.
corruptions-cifar10: data
	$(PY) -W ignore::RuntimeWarning:runpy -m datamodules.corruptions --data-dir $(DATA_DIR) --out $(DATA_DIR)/CIFAR-10-C $(ARGS)

# Robustness evaluation of a checkpoint: attacks on the classifier and on the whole randomized defense, every
# reversed input scored over several draws and batch compositions, worst case per example, sweeps, sanity checks.
# EVAL=eval (GPU profile, experiments/cifar10/eval.yaml) or EVAL=eval_quick (2-core CPU, 64 images).
# Report: results/eval/cifar10*/robustness.{md,json} + plots; resumes there if interrupted or preempted.
EVAL ?= eval
eval-cifar10: data
	@if [ -z "$(CKPT)" ]; then echo "usage: make eval-cifar10 CKPT=path/to/checkpoint.ckpt [EVAL=eval|eval_quick] [DATA_DIR=data] [ARGS=...]"; exit 2; fi
	$(CLI) test --config experiments/cifar10/$(EVAL).yaml --ckpt_path $(CKPT) --data.init_args.data_dir $(DATA_DIR) $(ARGS)

# The reversal in one picture (experiments/cifar10/reverse.yaml): the first 64 test images attacked (PGD-20)
# and reversed; the first 10 drawn clean / attacked / reversed with both changes and the predicted labels,
# the accuracy clean / attacked / attacked + reversal in the title and printed. PNG at
# results/reverse/cifar10/reversal.png (elsewhere: ARGS='--trainer.callbacks.init_args.output DIR/reversal.png';
# an existing picture is kept unless ARGS='--overwrite true'), also logged to W&B (offline).
reverse-cifar10: data
	@if [ -z "$(CKPT)" ]; then echo "usage: make reverse-cifar10 CKPT=path/to/checkpoint.ckpt [DATA_DIR=data] [ARGS=...]"; exit 2; fi
	$(CLI) predict --config experiments/cifar10/reverse.yaml --ckpt_path $(CKPT) --data.init_args.data_dir $(DATA_DIR) $(ARGS)

# Randomized-smoothing certification of a noise-trained checkpoint (experiments/cifar10/smoothing_sigma_*.yaml):
# certified accuracy at L2 radii 0-1, abstention, PREDICT, time (experiments/cifar10/certify.yaml);
# report under results/certify/cifar10. For a quick CPU look: ARGS='--data.init_args.n_examples 100
# --trainer.callbacks.init_args.n 2000'.
certify-cifar10: data
	@if [ -z "$(CKPT)" ]; then echo "usage: make certify-cifar10 CKPT=path/to/checkpoint.ckpt [DATA_DIR=data] [ARGS=...]"; exit 2; fi
	$(CLI) test --config experiments/cifar10/certify.yaml --ckpt_path $(CKPT) --data.init_args.data_dir $(DATA_DIR) $(ARGS)

# KAP scaling study (experiments/kap_scaling.py): a depth x width grid with and without KAP, trained and evaluated
# (clean / Gaussian noise / PGD / AutoAttack) with one command; table, JSON and accuracy-vs-parameters plot under
# results/kap_scaling/$(PROFILE), W&B offline. PROFILE=cpu (small_cnn, ~15 min on 2 cores) or PROFILE=gpu (WRN grid,
# CIFAR-10 and CIFAR-100). A rerun resumes from the stored grid points.
PROFILE ?= cpu
kap-scaling: data
	$(PY) experiments/kap_scaling.py --profile $(PROFILE) --data-dir $(DATA_DIR) $(ARGS)

# Throughput (experiments/bench.py): PGD-10 AT, FGSM-RS, the reversal and AutoAttack in images/s and against the
# FLOP floor. `bench`: CPU, tiny model (CI, < 60 s). `bench-gpu`: PreActResNet-18 on one GPU, the speed options
# one by one (fp32 baseline; bf16 + channels_last + fast views + sync-free EMA; + torch.compile), JSON under
# $(BENCH_OUT). Pass CKPT=... to time AutoAttack and the reversal on a trained (robust) model.
BENCH_OUT ?= results/bench
BENCH_GPU  = $(PY) experiments/bench.py --device cuda $(if $(CKPT),--checkpoint $(CKPT)) $(ARGS)
.PHONY: bench-gpu
bench:
	$(PY) experiments/bench.py --device cpu --tiny --json $(BENCH_OUT)/cpu-tiny.json $(ARGS)

bench-gpu:
	$(BENCH_GPU) --precision fp32 --benches pgd_at,fgsm_rs,reversal --seconds 10 --json $(BENCH_OUT)/gpu-fp32.json
	$(BENCH_GPU) --precision bf16 --channels-last --views fast --ema 0.998 --json $(BENCH_OUT)/gpu-bf16.json
	$(BENCH_GPU) --precision bf16 --channels-last --views fast --ema 0.998 --compile \
		--benches pgd_at,pgd_at_ssl,fgsm_rs,reversal --json $(BENCH_OUT)/gpu-bf16-compile.json

# One prepared GPU run (scripts/gpu_run.py): setup (wheels + pack), bench, fast-recipe training with
# max_time, bf16 weight shards, image grid, evaluation (clean / PGD-20 / AutoAttack, with the reversal),
# the adaptive attack; each stage with a time budget, everything in OUT (<= 8 files) after every stage.
# `make device-wheels` first (here): wheels in .whl/, the pack in shared_pack/ (name both in the device
# call's carry). `make gpu-run DEVICE=cpu TINY=1`: the same end to end on the CPU in under a minute.
# `make gpu-results OUT=folder` folds a returned folder into the results block of docs/results.md.
DEVICE  ?= cuda
TINY    ?=
OUT     ?= results/gpu_run$(if $(TINY),_tiny)
GPU_PY  ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
device-wheels:
	$(PY) scripts/device_wheels.py --pack $(PACK)

gpu-run:
	$(GPU_PY) scripts/gpu_run.py --device $(DEVICE) --out $(OUT) $(if $(TINY),--tiny) $(ARGS)

gpu-results:
	$(PY) scripts/gpu_results.py --out $(OUT) $(ARGS)
