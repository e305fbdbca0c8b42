"""The model: YOLO (``yolo``) and two-stage (``two_stage``, on ``trunks``) dynamic detectors, the router
and composite links (``router``), losses, and ``routing``: the route split (written once, for every model
kind) and the rules that choose its threshold.

Nothing here reads a config or touches the disk: a model is built from plain arguments
(:func:`dynamicdet.engine.build.build_model` turns a config into one).
"""
