"""What sits above the three methods and below the scripts: the registry mapping a run folder to its method's
editable model (``pipeline.registry``). Scripts -> pipeline -> vae / interface_gan / flow -> common."""
