<?php
header('Content-Type: text/plain');
echo "admin index\n";
