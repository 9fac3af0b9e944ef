//! warp (todo)
