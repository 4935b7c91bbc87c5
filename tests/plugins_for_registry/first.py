"""A plugin module that provides the recipe `first_recipe`."""

import tokenprune


@tokenprune.hookimpl
def tokenprune_strategies():
    return [tokenprune.Recipe("first_recipe", "attention | top_k", "a recipe of the first plugin")]
