"""Multi-step commands as data: a list of steps built from a request, run by one driver.

``extend --verify``, ``export --verify``, ``run RECIPE`` and ``demo`` each chain some of extend,
export, verify, eval, card and push. :mod:`.build` turns a request (or a recipe) into that list,
:mod:`.steps` holds one factory per step, and :mod:`.driver` runs the list in order, each step
adding its part of the record, or describes it for a dry run.
"""
