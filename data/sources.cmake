target_sources(mlaforge_core PRIVATE
)
