
,

email%_@x

lifecycle_stagelead