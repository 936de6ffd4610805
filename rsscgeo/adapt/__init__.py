"""Adapting a model to the user's own scenes from a few labelled patches (``rsscgeo adapt``).

``labels`` places the labels on the scenes' patch grids, ``classes`` decides the
adapted classes, ``tail`` splits the network into a frozen trunk and a trainable tail,
``fit`` trains the tail and cross-validates, and ``run`` ties them together.
"""
