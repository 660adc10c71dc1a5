"""DeepGen-nano's guest world: the procedural shape world, ShapeEval, and their hooks into generic training.

- :mod:`deepgen.nano.world`: the seeded shape world (samples, rendering, parquet rows);
- :mod:`deepgen.nano.shapeeval`: reads generated images back and scores them against a sample's metadata;
- :mod:`deepgen.nano.rewards`: ShapeEval and glyph rewards for stage 3, registered on import as ``shapeeval``,
  ``glyph`` and ``glyph_iou`` (``grpo.rewards.<name>``);
- :mod:`deepgen.nano.prompts`: the shape world as a stage-3 prompt source, registered as ``world``.

Generic training (:mod:`deepgen.training`) knows none of this; ``train/stage3_grpo.py`` imports the two
registering modules. ``world`` and ``shapeeval`` need no torch, so this package imports nothing eagerly.
"""
