"""The model: YOLO and two-stage dynamic detectors, the router and composite links, losses, routing rules.

Nothing here reads a config or touches the disk: a model is built from plain arguments
(:func:`dynamicdet.engine.build.build_model` turns a config into one).
"""
