pub fn target(_data: &[u8]) {}
