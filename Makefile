# ssl-reversal — common jobs. Run `make install` first; every target uses .venv.
PY        ?= .venv/bin/python
CLI       ?= .venv/bin/lightning
DATA_DIR  ?= data
PACK      ?= ../shared/data/cifar10-jpeg.npz
CKPT      ?=
ARGS      ?=

.PHONY: install test data train-cifar10 eval-cifar10 bench corruptions-cifar10 clean

install:
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	.venv/bin/pip install -q -e ".[test]"

test:
	.venv/bin/python -m pytest -q tests

# CIFAR-10 in the standard python layout under $(DATA_DIR); offline, built from the shared JPEG pack.
data: $(DATA_DIR)/cifar-10-batches-py/test_batch
$(DATA_DIR)/cifar-10-batches-py/test_batch:
	@if [ -f "$(PACK)" ]; then $(PY) $(dir $(PACK))cifar10_from_pack.py --out $(DATA_DIR) --pack $(PACK); \
	else echo "CIFAR-10 missing at $(DATA_DIR)/cifar-10-batches-py and no pack at $(PACK): pass --data.init_args.download true (online) or copy the folder there"; exit 1; fi

train-cifar10: data
	$(CLI) fit --config experiments/cifar10/pgd_at.yaml --data.init_args.data_dir $(DATA_DIR) $(ARGS)
