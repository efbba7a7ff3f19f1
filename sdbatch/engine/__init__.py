"""Everything that imports ray: the actor wrapping the Renderer, the dispatch loop and cluster set-up."""
