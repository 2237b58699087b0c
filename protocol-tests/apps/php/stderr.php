<?php
// A line on FastCGI STDERR (php-fpm sends error_log output there), then a normal answer.
error_log('portico-stderr-marker ' . ($_GET['tag'] ?? ''));
echo "logged\n";
