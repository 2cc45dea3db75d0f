"""The values of ``rave-deploy export --cpu-kernels``.

Apart from :mod:`rave_deploy.model` (which imports torch), so that the CLI offers them in
``--help`` without importing torch; ``rave_deploy.model`` takes them from here.
"""

#: How the TorchScript file computes its larger matrix products on CPU: ``portable``
#: (aten ops every libtorch has) or ``onednn`` (weights packed once on the host by
#: oneDNN, see :data:`rave_core.nn.conv.MIN_WEIGHTS_PACKED`; needs a libtorch with oneDNN).
CPU_KERNELS = ("portable", "onednn")
