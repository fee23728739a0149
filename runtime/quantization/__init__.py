"""Weight quantization at serving time: checkpoint layouts (``formats``), quantized weights as affine groups
(``groups``) and their kernels (``kernels``), and the choice of scheme for a model (``config``).

A leaf below the layers: it imports only ``runtime/kernels``, ``runtime/validation.py`` and itself. Quantizing a
loaded model's float weights is the loaders' (``loaders/transform.py``); ``tokenyard quantize`` is
``runtime/quantize/``."""
