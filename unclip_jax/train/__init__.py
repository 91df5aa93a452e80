"""The one trainer for every unCLIP stage.

A stage is data (`registry.TrainStage`: model builder, init inputs, loss, optional extras
and sampler), registered by name; `loop.train(config, workdir)` drives any of them.
"""
