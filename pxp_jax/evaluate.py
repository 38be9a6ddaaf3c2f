"""Top-1 accuracy of a model over batches: ``pxp_jax.prune.evaluation.accuracy``
(masks and few-class tasks accepted there), kept under this name for the
training job."""

from pxp_jax.prune.evaluation import accuracy

__all__ = ['accuracy']
