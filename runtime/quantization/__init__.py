"""Weight quantization at serving time: checkpoint layouts (``formats``), quantized linear weights and
their kernels (``weights``, ``kernels``), and the choice of scheme for a model (``config``)."""
