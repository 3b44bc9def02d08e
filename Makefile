# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install demo test

install:
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt

# animate the shipped source image with the shipped driving video (embedded default model)
demo: install
	$(PYTHON) demo.py --config config/shapes-64.yaml --checkpoint checkpoints/shapes-64.pth.tar \
		--source_image assets/shapes-source.png --driving_video assets/shapes-driving.mp4 \
		--result_video result.mp4 --preview result-preview.mp4 --relative --device cpu --overwrite

test: install
	$(PYTHON) -m pytest -q -rs tests
