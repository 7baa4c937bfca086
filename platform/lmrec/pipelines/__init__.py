"""Pipelines that drive training and serving together (a layer above both): continuous fine-tuning that trains on
new interactions, gates on validation and hot-swaps the running Serve application; offline batch inference that
runs the serving members' scoring over every user on Ray Data (``recommend_batch``)."""
