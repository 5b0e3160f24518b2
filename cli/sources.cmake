target_sources(mlaforge_torch PRIVATE
)
