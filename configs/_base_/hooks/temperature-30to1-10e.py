# ODConv's and DY-Conv's softmax temperature: T from 30 to 1, linearly per iteration, over the
# first 10 epochs, then 1 (the ODConv release; the KW paper trains its DY-Conv/ODConv rows so).
custom_hooks = [dict(type='TemperatureHook', start=30.0, end=1.0, epochs=10)]
