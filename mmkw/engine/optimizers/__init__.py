from .layer_decay import ConvNeXtLayerDecayOptimWrapperConstructor, convnext_layer_id

__all__ = ['ConvNeXtLayerDecayOptimWrapperConstructor', 'convnext_layer_id']
