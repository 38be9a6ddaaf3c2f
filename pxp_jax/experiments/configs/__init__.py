"""The shipped configs (``--config=NAME[:ARG]``): ``train``, ``prune``,
``search``, ``iterative`` and the ImageNet recipes ``imagenet``; ``options``
holds what they share."""
