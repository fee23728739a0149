"""Offline weight quantization (``tokenyard quantize``): round to nearest, GPTQ and AWQ on calibration
activations from our own model, written as Hugging Face GPTQ/AWQ checkpoints."""
